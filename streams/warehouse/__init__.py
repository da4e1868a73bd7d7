"""The warehouse: ClickHouse tables for results, stages, audit and datasets.

``backend`` puts chdb (embedded, the default) and a ClickHouse server
(clickhouse-connect) behind one interface, ``schema`` holds the versioned
migrations, ``loader`` moves Kafka topics into tables, ``datasets`` turns
tabular uploads into per-tenant tables, ``scope`` restricts a caller's SQL
to their tenants and ``service`` answers queries over HTTP. chdb allows one
process per data directory, so in embedded mode the warehouse service is
that one process and every other component reaches the warehouse through
it. docs/warehouse.md describes the tables and the rules.
"""
