/**
 * Notebook jobs on the server: the member's list, submit, one job, cancel.
 * The fields are those of labnotebook.provisioner.jobs (docs/jobs.md); `notebook_path` and
 * `output_path` are added by the server: the same files as paths of the file browser.
 */
import { ServerConnection } from '@jupyterlab/services';

import { requestAPI } from '../api';

export type JobState =
  | 'queued'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'cancelled'
  | 'scheduled';

export interface IJob {
  id: string;
  state: JobState;
  owner?: string;
  notebook: string;
  output?: string | null;
  kernel?: string | null;
  image?: string | null;
  submitted?: string | number | null;
  started?: string | number | null;
  finished?: string | number | null;
  cell?: number | null;
  cells?: number | null;
  error?: string | null;
  every?: string | null;
  next_run?: string | number | null;
  /** The notebook as a path of the file browser (null: outside the server's folder). */
  notebook_path?: string | null;
  /** The executed notebook as a path of the file browser, once there is one. */
  output_path?: string | null;
}

export interface ISubmitRequest {
  /** The notebook, as a path of the file browser. */
  path: string;
  /** A kernelspec name; null: the notebook's own. */
  kernel: string | null;
  /** papermill parameters, already typed (numbers, booleans, None, text). */
  parameters: Record<string, unknown>;
}

/** Whether a job may still change (and so be cancelled, and be polled for). */
export function isActive(job: IJob): boolean {
  return job.state === 'queued' || job.state === 'running';
}

export function listJobs(settings: ServerConnection.ISettings): Promise<IJob[]> {
  return requestAPI<IJob[]>(settings, 'jobs');
}

export function submitJob(
  settings: ServerConnection.ISettings,
  request: ISubmitRequest
): Promise<IJob> {
  return requestAPI<IJob>(settings, 'jobs', {
    method: 'POST',
    body: JSON.stringify(request)
  });
}

export function getJob(settings: ServerConnection.ISettings, id: string): Promise<IJob> {
  return requestAPI<IJob>(settings, `jobs/${encodeURIComponent(id)}`);
}

export function cancelJob(settings: ServerConnection.ISettings, id: string): Promise<IJob> {
  return requestAPI<IJob>(settings, `jobs/${encodeURIComponent(id)}/cancel`, {
    method: 'POST'
  });
}

/**
 * A parameter's value as `papermill -p NAME VALUE` (and `labnotebook jobs submit -p`) reads
 * it: True, False, None, an integer, a float, else the text itself.
 */
export function parameterValue(text: string): unknown {
  const value = text.trim();
  if (value === 'True') {
    return true;
  }
  if (value === 'False') {
    return false;
  }
  if (value === 'None') {
    return null;
  }
  if (/^[-+]?\d+$/.test(value)) {
    return parseInt(value, 10);
  }
  if (value !== '' && !isNaN(Number(value)) && /^[-+]?(\d|\.\d)/.test(value)) {
    return Number(value);
  }
  return text;
}
