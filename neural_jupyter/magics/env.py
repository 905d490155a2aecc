"""This machine and its debug view: ``%neural_env`` and ``%neural_dashboard``."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from neural_jupyter.magics.arguments import parse_arguments
from neural_jupyter.magics.base import NeuralMagicsBase


@magics_class
class EnvMagics(NeuralMagicsBase):
    """``%neural_env`` and ``%neural_dashboard``."""

    @magic_arguments()
    @argument("job_id", nargs="?", metavar="JOB", help="Job to show first (default: newest).")
    @argument(
        "--tunnel",
        choices=("auto", "none", "colab", "ngrok", "proxy"),
        default="auto",
        help="How to reach it: auto = Colab's proxy on Colab, jupyter-server-proxy on a hub, "
        "else inline; ngrok only when asked (needs NGROK_AUTHTOKEN; always password-protected).",
    )
    @argument("--port", type=int, default=0, help="Local port (default: a free one).")
    @argument("--stop", action="store_true", help="Stop the dashboard and close its tunnel.")
    @argument(
        "--keep-tunnel", action="store_true", help="Keep an ngrok tunnel open after the job ends."
    )
    @line_magic
    def neural_dashboard(self, line: str) -> Any:
        """A live debug dashboard (curves, gradient flow, activations, anomalies, model graph).

        Listens on 127.0.0.1 with a random token; run %%neural_run --debug for layer stats.
        """
        from neural_jupyter.ui.dashboard import control

        args = parse_arguments(self.neural_dashboard, line)
        if args.stop:
            print("dashboard stopped" if control.stop() else "no dashboard was running")
            return None
        job_id = None
        if args.job_id:
            from neural_jupyter import jobs

            job_id = jobs.get(args.job_id).id
        board = control.start(
            job_id, args.tunnel, args.port, close_tunnel_at_job_end=not args.keep_tunnel
        )
        if board.tunnel.kind == "ngrok":
            print(
                f"dashboard: {board.url}\nuser: {board.tunnel.username}  password: "
                f"{board.tunnel.password}  (shown once; the tunnel closes with --stop, at "
                "job end or when the kernel exits)"
            )
        self.display(board)
        return None

    @magic_arguments()
    @argument(
        "--apply",
        action="store_true",
        help="Also set the GPU memory-growth variables in this kernel (warns when a "
        "framework was already initialised and it is too late).",
    )
    @line_magic
    def neural_env(self, line: str) -> None:
        """Show the platform, accelerators, framework versions and the job settings."""
        from neural_jupyter.runtime.env_report import environment_report
        from neural_jupyter.runtime.gpu_settings import apply_to_kernel

        args = parse_arguments(self.neural_env, line)
        self.display(environment_report())
        if args.apply:
            for warning in apply_to_kernel():
                print(f"warning: {warning}")
            print("memory-growth settings applied to this kernel")
