"""The warehouse: ClickHouse tables for results, stages, audit and datasets.

``backend`` hides chdb (embedded, default) behind one interface, ``schema``
holds the versioned migrations, ``loader`` moves Kafka topics into tables and
``service`` answers queries over HTTP. chdb allows one process per data
directory, so in embedded mode the warehouse service is that one process and
every other component reaches the warehouse through it.
"""
