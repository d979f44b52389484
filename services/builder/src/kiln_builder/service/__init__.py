"""The Builder service: the build engine behind gRPC, its queue, records and
logs in NATS JetStream, and its workers."""
