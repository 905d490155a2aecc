"""A real Jupyter kernel driven over the Jupyter protocol (jupyter_client), as a front-end
would: execute cells without waiting, read iopub, find widgets by their comm_open messages,
and click buttons by sending ``comm_msg`` on the shell channel — the exact messages
JupyterLab sends, without a browser."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

ROOT = Path(__file__).resolve().parent.parent


class KernelSession:
    """One kernel process and a client; iopub messages are kept for inspection."""

    def __init__(self, home: Path, extra_path: str | None = None) -> None:
        path = [p for p in (extra_path, str(ROOT), os.environ.get("PYTHONPATH")) if p]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(path),
            "NEURAL_JUPYTER_HOME": str(home),
            "NEURAL_JUPYTER_MONITOR": "widget",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
        self.manager = KernelManager(kernel_name="python3")  # argv "python": this interpreter
        self.manager.start_kernel(env=env, cwd=str(home))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.messages: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}  # read while waiting for another one

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    # --- executing ------------------------------------------------------------------------------
    def execute(self, code: str) -> str:
        """Send a cell; returns its msg_id at once (the cell may block for a long time).

        Right after a failed cell the kernel aborts requests queued behind the error for a
        moment; a cell aborted that way is sent again."""
        for _ in range(5):
            msg_id = self.client.execute(code, store_history=True)
            try:
                early = self.reply(msg_id, timeout=0.5)
            except TimeoutError:
                return msg_id  # running
            if early["content"]["status"] != "aborted":
                self.replies[msg_id] = early
                return msg_id
            time.sleep(0.3)
        raise AssertionError(f"the kernel kept aborting {code!r}")

    def reply(self, msg_id: str, timeout: float) -> dict[str, Any]:
        """The execute_reply of ``msg_id`` (others are kept for their own ``reply``)."""
        deadline = time.monotonic() + timeout
        while msg_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no execute_reply for {msg_id} within {timeout} s")
            try:
                msg = self.client.get_shell_msg(timeout=min(left, 0.5))
            except queue.Empty:
                self.drain()
                continue
            self.replies[msg["parent_header"].get("msg_id")] = msg
        self.drain()
        return self.replies.pop(msg_id)

    def run(self, code: str, timeout: float = 120) -> dict[str, Any]:
        """Execute a cell and fail if it raised.

        (``execute`` sends a cell again that the kernel aborted after an earlier error.)"""
        reply = self.reply(self.execute(code), timeout)
        if reply["content"]["status"] != "ok":
            raise AssertionError(
                f"cell failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}"
                f"\n{self.text()[-2000:]}"
            )
        return reply

    # --- iopub ------------------------------------------------------------------------------------
    def drain(self, timeout: float = 0.0) -> None:
        """Keep what iopub has delivered (waiting up to ``timeout`` for the first message;
        a busy kernel publishes all the time, so only the first wait may block)."""
        wait = timeout
        while True:
            try:
                self.messages.append(self.client.get_iopub_msg(timeout=wait))
            except queue.Empty:
                return
            wait = 0.0

    def text(self) -> str:
        """Every stream and error text the kernel published so far."""
        out = []
        for msg in self.messages:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(content["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{content['ename']}: {content['evalue']}")
        return "".join(out)

    def wait_for_button(self, description: str, since: int = 0, timeout: float = 60) -> str:
        """The comm id of the newest button with this description opened after message
        number ``since`` (from comm_open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain(timeout=0.2)
            found = [
                m["content"]["comm_id"]
                for m in self.messages[since:]
                if m["msg_type"] == "comm_open"
                and m["content"]["data"].get("state", {}).get("_model_name") == "ButtonModel"
                and m["content"]["data"]["state"].get("description") == description
            ]
            if found:
                return found[-1]
        raise TimeoutError(f"no {description!r} button appeared within {timeout} s")

    def click(self, comm_id: str) -> None:
        """What a front-end sends when a button is clicked."""
        self.send_comm(comm_id, {"method": "custom", "content": {"event": "click"}})

    def send_comm(self, comm_id: str, data: dict[str, Any]) -> None:
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.client.shell_channel.send(msg)

    def widget_states(self, comm_id: str) -> list[dict[str, Any]]:
        """Every state update the kernel sent for a widget, in order."""
        self.drain()
        return [
            m["content"]["data"].get("state", {})
            for m in self.messages
            if m["msg_type"] == "comm_msg"
            and m["content"].get("comm_id") == comm_id
            and m["content"]["data"].get("method") == "update"
        ]
