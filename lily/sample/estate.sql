-- A small sample estate for `lily demo`: one warehouse, three schemas,
-- tables with columns, a dashboard with BI fields, lineage between them and
-- PII tags on customer data. Loads once (skips if tenant acme exists).

CREATE FUNCTION pg_temp.asset(t text, qn text, parent text, descr text DEFAULT NULL, own text[] DEFAULT '{}')
RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, parent_guid, description, owners)
    VALUES ('acme', t, qn, split_part(qn, '.', array_length(string_to_array(qn, '.'), 1)),
            (SELECT guid FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name = parent), descr, own)
    RETURNING guid
$$;

CREATE FUNCTION pg_temp.edge(up text, down text, process text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
    SELECT 'acme', u.guid, d.guid, p.guid
      FROM metastore.assets u, metastore.assets d
      LEFT JOIN metastore.assets p ON p.tenant_id = 'acme' AND p.qualified_name = process
     WHERE u.tenant_id = 'acme' AND u.qualified_name = up AND d.tenant_id = 'acme' AND d.qualified_name = down
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM metastore.tenants WHERE tenant_id = 'acme') THEN
        RETURN;
    END IF;
    INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme Corp');
    PERFORM pg_temp.asset('database', 'analytics', NULL, 'The analytics warehouse', '{data-platform@acme.example}');
    PERFORM pg_temp.asset('schema', 'analytics.raw', 'analytics', 'Raw loads from the shop');
    PERFORM pg_temp.asset('schema', 'analytics.sales', 'analytics', 'Cleaned sales data');
    PERFORM pg_temp.asset('schema', 'analytics.marts', 'analytics', 'Reporting marts');
    PERFORM pg_temp.asset('table', 'analytics.raw.customers', 'analytics.raw', 'Customers as the shop exports them', '{alice@acme.example}');
    PERFORM pg_temp.asset('column', 'analytics.raw.customers.id', 'analytics.raw.customers');
    PERFORM pg_temp.asset('column', 'analytics.raw.customers.email', 'analytics.raw.customers', 'Customer e-mail address');
    PERFORM pg_temp.asset('column', 'analytics.raw.customers.full_name', 'analytics.raw.customers');
    PERFORM pg_temp.asset('column', 'analytics.raw.customers.country', 'analytics.raw.customers');
    PERFORM pg_temp.asset('table', 'analytics.sales.customers', 'analytics.sales', 'One row per customer', '{alice@acme.example}');
    PERFORM pg_temp.asset('column', 'analytics.sales.customers.customer_id', 'analytics.sales.customers');
    PERFORM pg_temp.asset('column', 'analytics.sales.customers.email', 'analytics.sales.customers');
    PERFORM pg_temp.asset('column', 'analytics.sales.customers.country', 'analytics.sales.customers');
    PERFORM pg_temp.asset('table', 'analytics.sales.orders', 'analytics.sales', 'Orders placed on the web shop', '{bob@acme.example}');
    PERFORM pg_temp.asset('column', 'analytics.sales.orders.order_id', 'analytics.sales.orders');
    PERFORM pg_temp.asset('column', 'analytics.sales.orders.customer_id', 'analytics.sales.orders');
    PERFORM pg_temp.asset('column', 'analytics.sales.orders.amount', 'analytics.sales.orders');
    PERFORM pg_temp.asset('table', 'analytics.sales.payments', 'analytics.sales', 'Card payments of orders', '{bob@acme.example}');
    PERFORM pg_temp.asset('column', 'analytics.sales.payments.payment_id', 'analytics.sales.payments');
    PERFORM pg_temp.asset('column', 'analytics.sales.payments.order_id', 'analytics.sales.payments');
    PERFORM pg_temp.asset('column', 'analytics.sales.payments.card_number', 'analytics.sales.payments', 'Card number as the payment provider returns it');
    PERFORM pg_temp.asset('column', 'analytics.sales.payments.paid_at', 'analytics.sales.payments');
    PERFORM pg_temp.asset('table', 'analytics.marts.daily_revenue', 'analytics.marts', 'Revenue per day and country', '{finance@acme.example}');
    PERFORM pg_temp.asset('column', 'analytics.marts.daily_revenue.day', 'analytics.marts.daily_revenue');
    PERFORM pg_temp.asset('column', 'analytics.marts.daily_revenue.country', 'analytics.marts.daily_revenue');
    PERFORM pg_temp.asset('column', 'analytics.marts.daily_revenue.revenue', 'analytics.marts.daily_revenue');
    PERFORM pg_temp.asset('process', 'dbt.sales.customers', NULL, 'dbt model sales.customers');
    PERFORM pg_temp.asset('process', 'dbt.marts.daily_revenue', NULL, 'dbt model marts.daily_revenue');
    PERFORM pg_temp.asset('dashboard', 'looker.revenue_overview', NULL, 'Revenue overview for the board', '{finance@acme.example}');
    PERFORM pg_temp.asset('bi_field', 'looker.revenue_overview.country', 'looker.revenue_overview');
    PERFORM pg_temp.asset('bi_field', 'looker.revenue_overview.revenue', 'looker.revenue_overview');

    PERFORM pg_temp.edge('analytics.raw.customers', 'analytics.sales.customers', 'dbt.sales.customers');
    PERFORM pg_temp.edge('analytics.raw.customers.id', 'analytics.sales.customers.customer_id', 'dbt.sales.customers');
    PERFORM pg_temp.edge('analytics.raw.customers.email', 'analytics.sales.customers.email', 'dbt.sales.customers');
    PERFORM pg_temp.edge('analytics.raw.customers.country', 'analytics.sales.customers.country', 'dbt.sales.customers');
    PERFORM pg_temp.edge('analytics.sales.customers', 'analytics.marts.daily_revenue', 'dbt.marts.daily_revenue');
    PERFORM pg_temp.edge('analytics.sales.orders', 'analytics.marts.daily_revenue', 'dbt.marts.daily_revenue');
    PERFORM pg_temp.edge('analytics.sales.customers.country', 'analytics.marts.daily_revenue.country', 'dbt.marts.daily_revenue');
    PERFORM pg_temp.edge('analytics.sales.orders.amount', 'analytics.marts.daily_revenue.revenue', 'dbt.marts.daily_revenue');
    PERFORM pg_temp.edge('analytics.marts.daily_revenue', 'looker.revenue_overview');
    PERFORM pg_temp.edge('analytics.marts.daily_revenue.country', 'looker.revenue_overview.country');
    PERFORM pg_temp.edge('analytics.marts.daily_revenue.revenue', 'looker.revenue_overview.revenue');

    INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
    SELECT 'acme', guid, 'PII' FROM metastore.assets
     WHERE tenant_id = 'acme' AND qualified_name IN ('analytics.raw.customers.email', 'analytics.raw.customers.full_name');
    INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
    SELECT 'acme', guid, 'PCI' FROM metastore.assets
     WHERE tenant_id = 'acme' AND qualified_name = 'analytics.sales.payments.card_number';

    -- Card numbers show their last four digits (Ranger's MASK_SHOW_LAST_4);
    -- PII and GDPR are hashed by the default policies every tenant has.
    INSERT INTO metastore.masking_policies (tenant_id, name, tags, mask, description)
    VALUES ('acme', 'cards', '{PCI}', 'MASK_SHOW_LAST_4', 'Card numbers show their last four digits');
    -- The sample warehouse (sample/warehouse.sql), served by the SQL endpoint.
    INSERT INTO metastore.governed_tables (tenant_id, table_name, asset, kind, connection, location)
    VALUES ('acme', 'customers', 'analytics.sales.customers', 'postgres', 'warehouse', 'public.customers'),
           ('acme', 'orders', 'analytics.sales.orders', 'postgres', 'warehouse', 'public.orders'),
           ('acme', 'payments', 'analytics.sales.payments', 'postgres', 'warehouse', 'public.payments');
END $$;
