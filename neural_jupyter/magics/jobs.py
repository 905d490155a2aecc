"""The job store from the notebook: ``%neural_jobs``, ``%neural_attach``, ``%neural_cancel``,
``%neural_rm``, ``%neural_logs``."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from neural_jupyter.magics.arguments import (
    MONITOR_CHOICES,
    STATUS_CHOICES,
    parse_arguments,
    renamed_flag,
)
from neural_jupyter.magics.base import NeuralMagicsBase

JOB_ID_HELP = "Job id (a unique prefix is enough)."


@magics_class
class JobsMagics(NeuralMagicsBase):
    """``%neural_jobs``, ``%neural_attach``, ``%neural_cancel``, ``%neural_rm``,
    ``%neural_logs``."""

    @magic_arguments()
    @argument(
        "--status",
        type=str.upper,
        choices=STATUS_CHOICES,
        help="Only jobs in this state (any case: running and RUNNING are the same).",
    )
    @argument(
        "--instances",
        action="store_true",
        help="List paid cloud instances that are still running (billing), not jobs.",
    )
    @argument("--platform", help="Only jobs on this platform.")
    @argument("--backend", help="Deprecated: the old name of --platform.")
    @argument("--limit", type=int, default=20, help="At most this many (newest first).")
    @line_magic
    def neural_jobs(self, line: str) -> None:
        """List jobs from the job store (all kernels, all platforms)."""
        from neural_jupyter import jobs
        from neural_jupyter.ui.tables import InstanceTable, JobTable

        args = parse_arguments(self.neural_jobs, line)
        if args.instances:
            self.display(InstanceTable(jobs.JobStore().live_instances()))
            return
        found = jobs.list(
            status=args.status,
            platform=renamed_flag(args, "backend", "platform"),
            limit=args.limit,
        )
        self.display(JobTable([job.record for job in found]))

    @magic_arguments()
    @argument("job_id", metavar="ID", help=JOB_ID_HELP)
    @argument("--monitor", choices=MONITOR_CHOICES, help="Progress display (default: auto).")
    @line_magic
    def neural_attach(self, line: str) -> Any:
        """Watch a job again (also after a kernel restart); returns its TrainingRun."""
        from neural_jupyter import api

        args = parse_arguments(self.neural_attach, line)
        return api.attach(args.job_id, self.monitor(args))

    @magic_arguments()
    @argument("job_id", metavar="ID", help=JOB_ID_HELP)
    @line_magic
    def neural_cancel(self, line: str) -> None:
        """Stop a job for good (its whole process tree, or the remote job); a job in any state
        can be cancelled, also one whose launch never completed."""
        from neural_jupyter import api

        args = parse_arguments(self.neural_cancel, line)
        print(api.cancel_report(args.job_id))

    @magic_arguments()
    @argument("job_id", metavar="ID", help=JOB_ID_HELP)
    @argument(
        "--force",
        action="store_true",
        help="Also a job that may still be running: cancel it first, then remove it.",
    )
    @argument("--keep-files", action="store_true", help="Keep the job's directory (bundle, logs).")
    @line_magic
    def neural_rm(self, line: str) -> None:
        """Remove a job from the job store, in any state (a damaged row, a launch that never
        completed), and its local files."""
        from neural_jupyter import jobs

        args = parse_arguments(self.neural_rm, line)
        record = jobs.remove(args.job_id, force=args.force, keep_files=args.keep_files)
        print(f"job {record.id} removed")

    @magic_arguments()
    @argument("job_id", metavar="ID", help=JOB_ID_HELP)
    @argument("--tail", type=int, metavar="N", help="Only the last N lines.")
    @line_magic
    def neural_logs(self, line: str) -> None:
        """Print what a job printed: its progress (start, epochs, end) and its log lines."""
        from neural_jupyter.ui.transcript import transcript

        args = parse_arguments(self.neural_logs, line)
        lines = transcript(args.job_id, tail=args.tail)
        print("\n".join(lines) if lines else f"no log lines yet for job {args.job_id}")
