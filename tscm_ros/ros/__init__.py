"""ros: the ROS 2 programs (node, bag player) and their helpers.

Importing this package sets up the process before anything loads a library that starts threads:

* ``OMP_WAIT_POLICY=PASSIVE`` unless it is already set, before anything loads an OpenMP runtime (torch,
  faiss): OpenMP threads then sleep at barriers instead of spinning. A node shares the CPU with its
  executor, DDS and OpenCV's threads, and on the 2-core development machine, with RootSIFT verification at
  30 Hz, torch's 2 spinning threads turned a 50 ms (CPU) inference into 140-210 ms of CPU and a 1.4-2.0 s
  wall p95; passive waiting gave 50 ms CPU and a 150-260 ms p95 (benchmarks/soak.py; the node's
  ``num_threads: 1`` also avoids it, at about twice the quiet-machine inference time).
* one glibc heap arena (:func:`tscm_ros.ros.heap.limit_heap_arenas`, unless ``MALLOC_ARENA_MAX`` is set),
  before ``import rclpy``: that import starts two threads, and glibc gives every thread that allocates
  before the limit an arena of its own, which later threads then share. Called from the node's ``main()``
  (after its imports) the limit left 3-4 arenas in the node.
"""

import os

from tscm_ros.ros.heap import limit_heap_arenas

OMP_WAIT_POLICY = "PASSIVE"
os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
limit_heap_arenas()
