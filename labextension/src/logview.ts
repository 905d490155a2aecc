/** A job's log tail in a main-area tab, refreshed while the job runs. */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ApiError, jobLogs } from './api';

const TAIL = 500;

export class LogView extends Widget {
  constructor(
    readonly jobId: string,
    private readonly isRunning: () => boolean
  ) {
    super();
    this.addClass('nj-LogView');
    this._status = document.createElement('div');
    this._status.className = 'nj-log-status';
    this._pre = document.createElement('pre');
    this._pre.className = 'nj-log';
    this.node.append(this._status, this._pre);
    this._poll = new Poll({
      auto: true,
      factory: () => this._load(),
      frequency: { interval: 2000, backoff: true, max: 30000 },
      name: `neural-jupyter:logs:${jobId}`,
      standby: () => (this.isVisible ? 'when-hidden' : true)
    });
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  protected onAfterShow(): void {
    void this._poll.refresh();
  }

  private async _load(): Promise<void> {
    let lines: string[];
    try {
      lines = (await jobLogs(this.jobId, TAIL)).lines;
    } catch (error) {
      this._status.textContent = `Cannot read the logs: ${(error as ApiError).message}`;
      throw error;
    }
    const atBottom =
      this.node.scrollTop + this.node.clientHeight >= this.node.scrollHeight - 8;
    this._pre.textContent = lines.length
      ? lines.join('\n')
      : '(no log lines yet: the job has printed only progress events, which the sidebar shows)';
    const running = this.isRunning();
    this._status.textContent =
      `last ${TAIL} lines of ${this.jobId} (events left out, secrets masked)` +
      (running ? ' · live' : '');
    if (atBottom) {
      this.node.scrollTop = this.node.scrollHeight;
    }
    if (!running) {
      void this._poll.stop();
    }
  }

  private _poll: Poll;
  private _pre: HTMLPreElement;
  private _status: HTMLDivElement;
}
