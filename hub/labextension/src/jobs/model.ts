/**
 * The member's jobs, kept fresh: polled often while one of them is queued or running, rarely
 * otherwise, and not at all while the browser tab is hidden.
 */
import { ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { IJob, isActive, listJobs } from './api';

export class JobsModel {
  constructor(settings: ServerConnection.ISettings) {
    this._settings = settings;
    this._poll = new Poll({
      factory: () => this._fetch(),
      frequency: { interval: this._idleInterval, backoff: false, max: this._idleInterval },
      name: 'labnotebook:jobs',
      standby: 'when-hidden'
    });
  }

  get jobs(): readonly IJob[] {
    return this._jobs;
  }

  /** Why the last refresh failed (the server's message), or null. */
  get error(): string | null {
    return this._error;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Seconds between refreshes while a job is queued or running. */
  set activeInterval(seconds: number) {
    this._activeInterval = Math.max(1, seconds) * 1000;
    this._reschedule();
  }

  /** Seconds between refreshes while none is. */
  set idleInterval(seconds: number) {
    this._idleInterval = Math.max(5, seconds) * 1000;
    this._reschedule();
  }

  /** Refresh now (after a submit or a cancel, or by the Refresh button). */
  async refresh(): Promise<void> {
    await this._poll.refresh();
    await this._poll.tick;
  }

  dispose(): void {
    this._poll.dispose();
  }

  private async _fetch(): Promise<void> {
    try {
      this._jobs = await listJobs(this._settings);
      this._error = null;
    } catch (error) {
      this._error = (error as Error).message;
    }
    this._reschedule();
    this._changed.emit();
  }

  private _reschedule(): void {
    const interval = this._jobs.some(isActive) ? this._activeInterval : this._idleInterval;
    if (this._poll.frequency.interval !== interval) {
      this._poll.frequency = { interval, backoff: false, max: interval };
    }
  }

  private _settings: ServerConnection.ISettings;
  private _poll: Poll;
  private _jobs: IJob[] = [];
  private _error: string | null = null;
  private _activeInterval = 2000;
  private _idleInterval = 30000;
  private _changed = new Signal<this, void>(this);
}
