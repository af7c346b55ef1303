"""The Corridor bag (ref/ then query/, 5 Hz, no odometry) replayed into place_recognition_node with a params
file: how many query keyframes get a correct best match, and does tscm_build_map agree (online = offline).

    .venv/bin/python benchmarks/corridor_replay.py --corridor ../shared/data/corridor \
        --params config/place_recognition.yaml OLD_PARAMS.yaml

A query's best match is its first verified candidate when verification is on, else its rank-0 candidate;
correct when it is a ref image within +-2 indices (the dataset's ground truth). Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tscm_ros.bags import write_image_bag
from tscm_ros.image_files import list_images, read_rgb
from tscm_ros.poses import NS_PER_S
from tscm_ros.recognition import read_params_file
from tscm_ros.ros.online_offline import compare_online_offline

START_NS = 1_700_000_000 * NS_PER_S
PERIOD_NS = NS_PER_S // 5


def write_corridor_bag(corridor: Path, bag: Path) -> tuple[int, int]:
    refs, queries = list_images(corridor / "ref"), list_images(corridor / "query")
    frames = ((START_NS + i * PERIOD_NS, read_rgb(path)) for i, path in enumerate(refs + queries))
    write_image_bag(bag, frames)
    return len(refs), len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corridor", type=Path, default=Path("../shared/data/corridor"))
    parser.add_argument("--params", type=Path, nargs="+", required=True, help="params files to compare")
    parser.add_argument("--rate", type=float, default=0.5, help="bag_player speed factor")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corridor_replay_"))
    n_refs, n_queries = write_corridor_bag(args.corridor, work / "bag")
    print("| params | exclusion | verify | queries processed | correct best | wrong best | online=offline |")
    print("|---|---|---|---|---|---|---|")
    for index, params in enumerate(args.params):
        options = read_params_file(params)
        comparison = compare_online_offline(
            work / "bag", params, work / f"run{index}", rate=args.rate, topics={"image": "/camera/image_raw"}
        )
        best: dict[int, tuple] = {}
        for pair in sorted(comparison.node_pairs, key=lambda p: (p[0], -p[3], p[5])):
            if options.get("verify", True) and not pair[3]:
                continue
            best.setdefault(pair[0], pair)
        query_us = [round((START_NS + (n_refs + q) * PERIOD_NS) / 1000) for q in range(n_queries)]
        index_of = {stamp: q for q, stamp in enumerate(query_us)}
        correct = wrong = 0
        for stamp, pair in best.items():
            if stamp not in index_of:
                continue  # a ref keyframe
            ref = round((pair[1] * 1000 - START_NS) / PERIOD_NS)
            if ref < n_refs and abs(ref - index_of[stamp]) <= 2:
                correct += 1
            else:
                wrong += 1
        processed = sum(1 for stamp in comparison.node_keyframes if round(stamp / 1000) in index_of)
        exclusion = f"{options.get('exclusion_window_s', '?')} s"
        cells = (str(params), exclusion, str(options.get("verify", True)), f"{processed}/{n_queries}",
                 str(correct), str(wrong), "yes" if comparison.same else "NO")  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
