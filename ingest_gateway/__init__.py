"""The ingest gateway: a tus 1.0 server that writes upload bytes to Kafka.

Bytes are acknowledged only once they are durable in Kafka, in the same
transaction as the upload's new offset, so the offset a client reads back is
exactly what the platform holds.
"""
