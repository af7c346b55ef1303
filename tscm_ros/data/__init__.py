"""Datasets: :class:`~tscm_ros.data.dataset.RetrievalDataset`, its loaders (benchmark folders, the
coordinate CSV, Pittsburgh), the ``KIND:PATH`` registry (:mod:`.registry`), training tuples and mining."""
