"""Reading W&B's offline run files back, for tests that check what a run logged."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def read_wandb_records(path: Path) -> list:
    """The protobuf ``Record``s of a ``run-*.wandb`` file. The file is W&B's header
    (``:W&B``, magic 0xBEE1, version 0) followed by a LevelDB-style log: 32 KiB blocks of
    chunks, each with a 7-byte header (CRC32C, little-endian uint16 length, type: 1 full,
    2 first, 3 middle, 4 last); a block's tail shorter than a header is padding."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    magic, version = struct.unpack("<HB", data[4:7])
    assert (magic, version) == (0xBEE1, 0)
    block, pos, payloads, pending = 32768, 7, [], None
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
            pending = None
        elif kind == 0 and length == 0:  # zero padding
            continue
        else:
            raise AssertionError(f"bad chunk type {kind} at {pos}")
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_view(path: Path) -> dict:
    """History rows, final summary, config, metric definitions and run of one run file."""
    rows, summary, config, metrics, run, exited = [], {}, {}, {}, None, False
    for r in read_wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            rows.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            for u in r.summary.update:
                summary[_key(u)] = json.loads(u.value_json)
        elif kind == "config":
            for u in r.config.update:
                config[_key(u)] = json.loads(u.value_json)
        elif kind == "run":
            run = r.run
            for u in r.run.config.update:
                config[_key(u)] = json.loads(u.value_json)
        elif kind == "metric":
            metrics[r.metric.name] = r.metric
        elif kind == "exit":
            exited = True
    return {"rows": rows, "summary": summary, "config": config, "metrics": metrics, "run": run, "exited": exited}


def series(rows: list[dict], key: str) -> list:
    return [row[key] for row in rows if key in row]


