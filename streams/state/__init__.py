"""The Redis state layer: keys (keys.py, every key built once), record shapes
(records.py), the store (store.py: BalanceStore and the Redis Functions of functions.lua)
and the raw RESP channel of the hot path (resp.py). Redis is a cache of durable facts
(docs/reliability.md)."""

from streams.state.boards import BOARD_SHARDS, BOARD_TTL_S
from streams.state.keys import KeySpace
from streams.state.records import EventMove, EventRecord, MemberMoves, decode_record, encode_json_record, first_row
from streams.state.store import BalanceStore

__all__ = ["BOARD_SHARDS", "BOARD_TTL_S", "BalanceStore", "EventMove", "EventRecord", "KeySpace", "MemberMoves",
           "decode_record", "encode_json_record", "first_row"]
