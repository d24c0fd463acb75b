"""The SQL endpoint through the Python clients people run: psycopg 3 with
server-side prepared statements and binary results, and asyncpg (which
prepares every statement and reads binary). Usage: sql_clients.py PORT
PASSWORD. Expects customers.email of tenant acme tagged PII (hashed by the
default policy). Prints "psycopg ok" and "asyncpg ok"."""

import asyncio
import datetime
import hashlib
import sys

import psycopg


def expected(i: int) -> str:
    return hashlib.sha256(f"user{i}@example.com".encode()).hexdigest()


def check_psycopg(port: str, password: str) -> None:
    dsn = f"host=127.0.0.1 port={port} dbname=acme user=analyst password={password} sslmode=disable"
    # prepare_threshold=0: every statement is prepared on the server at once.
    with psycopg.connect(dsn, prepare_threshold=0, autocommit=True) as conn:
        with conn.cursor(binary=True) as cur:
            for i in range(1, 8):
                cur.execute(
                    "SELECT id, email, born, city FROM customers WHERE id = %s",
                    (i,),
                    prepare=True,
                )
                row = cur.fetchone()
                assert row is not None, i
                assert row[0] == i, row
                assert row[1] == expected(i), row
                assert row[2] == datetime.date(1970, 1, 1) + datetime.timedelta(days=7 * i), row
            cur.execute(
                "SELECT count(*), sum(amount) FROM orders WHERE customer_id = %s",
                (5,),
                prepare=True,
            )
            count, total = cur.fetchone()
            assert count == 3, (count, total)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM customers WHERE email LIKE %s", ("%@%",))
            assert cur.fetchone()[0] == 0
    print("psycopg ok")


async def check_asyncpg(port: str, password: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host="127.0.0.1", port=int(port), user="analyst", database="acme",
        password=password, ssl=False,
    )
    try:
        stmt = await conn.prepare("SELECT email FROM customers WHERE id = $1")
        for i in range(1, 4):
            assert await stmt.fetchval(i) == expected(i)
    finally:
        await conn.close()
    print("asyncpg ok")


def main() -> None:
    port, password = sys.argv[1], sys.argv[2]
    check_psycopg(port, password)
    asyncio.run(check_asyncpg(port, password))


if __name__ == "__main__":
    main()
