"""Running the user's own code as jobs: a function (``@neural_jupyter.remote``), a cell
(``%%neural_remote``) or a script folder (``neural_jupyter.run_script``), with the job store,
live monitor, cancel, dry run and cost guard that models have.

(The package is ``usercode`` rather than ``remote`` so that ``neural_jupyter.remote`` stays
the decorator.)
"""

from neural_jupyter.usercode.cell import run_cell
from neural_jupyter.usercode.function import RemoteFunction, remote
from neural_jupyter.usercode.launch import CodePlan, JobOptions
from neural_jupyter.usercode.script import run_script

__all__ = ["CodePlan", "JobOptions", "RemoteFunction", "remote", "run_cell", "run_script"]
