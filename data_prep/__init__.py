"""deocc data preparation: a Beam pipeline turning face photos into occluded/clean pairs.

Entry points: `python -m data_prep.build` and `data_prep.build_lib.build_dataset`.
"""
