-- The sample warehouse `lily demo` serves through its SQL endpoint: real
-- rows in a database of their own, governed by the sample estate's assets
-- analytics.sales.customers, .orders and .payments. Loads once.

CREATE TABLE IF NOT EXISTS customers (
    customer_id int PRIMARY KEY,
    email       text NOT NULL,
    full_name   text NOT NULL,
    country     text NOT NULL
);
INSERT INTO customers
SELECT g, 'customer' || g || '@example.com', 'Customer ' || g,
       (ARRAY['FR', 'DE', 'NO', 'US', 'JP'])[1 + g % 5]
  FROM generate_series(1, 2000) g
 WHERE NOT EXISTS (SELECT 1 FROM customers);

CREATE TABLE IF NOT EXISTS orders (
    order_id    int PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers,
    amount      numeric(10, 2) NOT NULL,
    ordered_at  timestamptz NOT NULL
);
INSERT INTO orders
SELECT g, 1 + (g * 7) % 2000, round((5 + (g * 37) % 495)::numeric + 0.99, 2),
       TIMESTAMPTZ '2026-01-01 08:00:00+00' + g * interval '47 minutes'
  FROM generate_series(1, 5000) g
 WHERE NOT EXISTS (SELECT 1 FROM orders);

CREATE TABLE IF NOT EXISTS payments (
    payment_id  int PRIMARY KEY,
    order_id    int NOT NULL REFERENCES orders,
    card_number text NOT NULL,
    paid_at     timestamptz NOT NULL
);
INSERT INTO payments
SELECT g, g, '4111-' || lpad((g % 10000)::text, 4, '0') || '-' || lpad(((g * 31) % 10000)::text, 4, '0') || '-' || lpad(((g * 97) % 10000)::text, 4, '0'),
       TIMESTAMPTZ '2026-01-01 08:05:00+00' + g * interval '47 minutes'
  FROM generate_series(1, 5000) g
 WHERE NOT EXISTS (SELECT 1 FROM payments);
