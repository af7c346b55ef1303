"""A robot process for the fault tests: writes keyframes through a FleetPlaceStore, prints 'ack KF' after
each add() returned, saves the local map every 10 keyframes and flushes at the end.

usage: fleet_writer.py URI SCHEMA LOCAL_MAP TOTAL
"""

from __future__ import annotations

import sys
import time

import numpy as np

from tscm_ros.fleet import open_place_store
from tscm_ros.placemap import PlaceMeta

DIM = 32
FP = "fp-A" + "0" * 60


def main() -> None:
    uri, schema, local_map, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = open_place_store(
        uri, dim=DIM, model_fingerprint=FP, robot_id="r1", session_id="s1", local_map=local_map, schema=schema
    )
    print(f"start {store.next_keyframe_index} {store.connection_state} {store.outbox_depth}", flush=True)
    rng = np.random.default_rng(store.next_keyframe_index)
    while (kf := store.next_keyframe_index) < total:
        store.search(rng.standard_normal(DIM), 3, query_stamp_ns=kf * 100_000_000, exclusion_window_s=1.0)
        store.add(rng.standard_normal(DIM), PlaceMeta(stamp_ns=kf * 100_000_000))
        print(f"ack {kf}", flush=True)
        if kf % 10 == 9:
            store.save()
        time.sleep(0.02)
    store.save()
    flushed = store.flush(60.0)
    print(f"done {flushed} {store.outbox_depth}", flush=True)
    store.close()


if __name__ == "__main__":
    main()
