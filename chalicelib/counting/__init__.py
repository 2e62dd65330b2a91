"""The counting engine: stream processor, healer and dead-letter replay.

Generic over counted items: anything under ``SK = SERVICE#`` that carries
``deleted`` and ``counter_processed`` is counted.
"""
