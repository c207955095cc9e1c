"""The write-intent log: every batch the writer applies, in order, outside PostgreSQL.

Order of the writer's steps for one batch, and why the log has no gap::

    BEGIN; nextval('writer_batch_seq'); apply_batch  ->  log append + fdatasync  ->  COMMIT  ->  ack

- A crash before the append returns: nothing committed, nothing acked; a torn last line at
  most, which readers drop (:mod:`writer.intentlog.reader`). The broker redelivers.
- A crash after the append, before ``COMMIT``: the log holds a batch the database does not.
  Its intents were not acked, so they are redelivered, applied and logged again in a later
  batch. The log is a superset of the database; replay applies each intent at its last
  occurrence (:mod:`writer.intentlog.replay`), which is where the database applied it.
  When PostgreSQL itself crashed, the next batch may get the same number (``nextval`` is
  WAL-logged 32 values ahead, lost with the uncommitted transaction): each record has an id
  of its own, and records sharing a number are read in the order they were appended.
- A crash after ``COMMIT``, before the ack: the batch is in both. The redelivered intents are
  skipped by the ledger, so they are not applied, and not logged, again.

So every committed batch was logged first, and the log never needs a commit marker: a marker
written after ``COMMIT`` would leave the same window (a crash between the two) and need the
same rule. The batch number comes from ``writer_batch_seq`` inside the transaction, so the
segments of an active writer and of the standby that took over merge in commit order.
"""

from writer.intentlog.log import IntentLog, S3Shipper, SegmentShipper, compress_segment
from writer.intentlog.reader import LogFilter, LogReader, Segment
from writer.intentlog.replay import ReplaySummary, WriterActive, replay_log, replay_records
from writer.intentlog.segment import LogFormatError, LogRecord, decode_record, encode_record

__all__ = [
    "IntentLog",
    "LogFilter",
    "LogFormatError",
    "LogReader",
    "LogRecord",
    "ReplaySummary",
    "S3Shipper",
    "Segment",
    "SegmentShipper",
    "WriterActive",
    "compress_segment",
    "decode_record",
    "encode_record",
    "replay_log",
    "replay_records",
]
