"""The baseline `flowhook bench` compares the processor with: a plain Faust agent doing one
table update and one send per event, configured like the processor (same broker, store,
partitions). Run as `python -m processor.bench.agent worker -l warn`."""

from __future__ import annotations

import faust

from processor.settings import Settings

OUT_SUFFIX = "bench.agent.out"


def make_app(settings: Settings) -> faust.App:
    datadir = settings.data_dir / "bench-agent"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}bench-agent",
        broker=[f"kafka://{b.strip()}" for b in settings.brokers.split(",")],
        store="memory://" if settings.store == "memory" else "rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        producer_acks=-1,
        web_enabled=False,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
    )
    source = app.topic(settings.topics.events, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    out = app.topic(settings.topics.name(OUT_SUFFIX), key_serializer="raw", value_serializer="raw",
                    partitions=settings.partitions)
    counts = app.Table("bench-agent-counts", default=int, partitions=settings.partitions)

    @app.agent(source)
    async def plain_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            counts[event.key] += 1
            await out.send(key=event.key, value=event.value)

    return app


if __name__ == "__main__":
    import logging

    # `faust worker -l warn` keeps its terminal spinner, which sets the root logger to DEBUG
    # and spins on every record: every aiokafka/Faust debug call then builds a LogRecord that
    # is never printed (~12% of the agent's time in a py-spy profile). A plain agent in
    # production does not pay for that, so the baseline does not either.
    logging.disable(logging.DEBUG)
    make_app(Settings.from_env()).main()
