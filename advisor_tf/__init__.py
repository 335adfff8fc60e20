"""advisor_tf: image classifiers trained on noisy and long-tailed labels with
a meta-learned advisor network (MFRW, MES) in Keras 3 / TensorFlow.

The flagfiles that reproduce the thesis' tables ship with the package:

  >>> import advisor_tf
  >>> advisor_tf.flagfile("quickstart")      # path of flags/quickstart.cfg

The commands name them directly: `advisor-train --flagfile=quickstart`.

The commands (`advisor-train`, ..., and their `python -m advisor_tf.<cmd>`
forms) keep TensorFlow's C++ log off the terminal: they set
`TF_CPP_MIN_LOG_LEVEL=3` before TensorFlow is imported unless the
environment sets it or `--tf_log`/`--verbosity` asks for the log
(`advisor_tf.cli`). Importing the library changes no setting.
"""

import importlib.resources
import os


def flagfile(name):
  """The path of a bundled flagfile (`quickstart`, `cifar_flip`, ...), usable
  as `--flagfile=` from any directory, in a clone or an installed package."""
  folder = importlib.resources.files("advisor_tf") / "flags"
  path = folder / (name if name.endswith(".cfg") else f"{name}.cfg")
  if not path.is_file():
    known = sorted(p.name[:-4] for p in folder.iterdir()
                   if p.name.endswith(".cfg"))
    raise ValueError(f"No bundled flagfile {name!r}; known: "
                     f"{', '.join(known)}.")
  return os.fspath(path)
