
from advisor_tf import config as _config_lib

# The digits experiments' common settings: the quickstart's, quiet, no export;
# the meta set clean, drawn out of train before the noise (the thesis').
BASE = _config_lib.TrainConfig(dataset="digits", noise="flip",
                               flip_targets="random", backbone="small_cnn",
                               meta_source="random", verbose=0, export=False)
