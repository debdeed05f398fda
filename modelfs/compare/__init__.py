"""Comparing models tensor by tensor: `modelfs diff`, compare_models, compare_series.

store/checkpoints.py reads tensor tables (safetensors, torch.save zips, GGUF)
by range (the store cuts torch zips at their tensors with it too); stats.py measures one tensor pair in chunks; rollup.py groups by layer and
module kind; sources.py opens what is compared (store versions, other stores,
local files); diff.py decides what differs, reading only that; series.py runs
it over consecutive versions; report.py renders tables, CSV and plots.
"""
