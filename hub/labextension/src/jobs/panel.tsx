/**
 * The Jobs panel of the left sidebar: the member's jobs, newest first, with their state,
 * progress, the executed notebook (a click opens it), the error, and Cancel.
 */
import { ReactWidget, UseSignal } from '@jupyterlab/apputils';
import { Button, refreshIcon, ToolbarButtonComponent } from '@jupyterlab/ui-components';
import * as React from 'react';

import { IJob, isActive } from './api';
import { JobsModel } from './model';

export interface IJobsPanelActions {
  open(path: string): void;
  cancel(job: IJob): void;
}

export class JobsPanel extends ReactWidget {
  constructor(model: JobsModel, actions: IJobsPanelActions) {
    super();
    this._model = model;
    this._actions = actions;
    this.id = 'labnotebook-jobs';
    this.addClass('lnb-JobsPanel');
    this.title.caption = 'Notebook jobs';
  }

  protected onAfterShow(): void {
    void this._model.refresh();
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this._model.changed}>
        {() => (
          <JobList model={this._model} actions={this._actions} />
        )}
      </UseSignal>
    );
  }

  private _model: JobsModel;
  private _actions: IJobsPanelActions;
}

function JobList(props: { model: JobsModel; actions: IJobsPanelActions }): JSX.Element {
  const { model, actions } = props;
  const jobs = [...model.jobs].sort((a, b) => timeOf(b.submitted) - timeOf(a.submitted));
  return (
    <div className="lnb-JobsPanel-content">
      <header className="lnb-JobsPanel-header">
        <h2>Jobs</h2>
        <ToolbarButtonComponent
          icon={refreshIcon}
          tooltip="Refresh the list of jobs"
          onClick={() => void model.refresh()}
        />
      </header>
      {model.error && (
        <div className="lnb-JobsPanel-error" role="alert">
          {model.error}
        </div>
      )}
      {jobs.length === 0 && !model.error && (
        <p className="lnb-JobsPanel-empty">
          No jobs yet. Open a notebook and use "Run as job" to run it to the end without
          keeping this page open.
        </p>
      )}
      <ul className="lnb-JobList" aria-label="Jobs">
        {jobs.map(job => (
          <JobItem key={job.id} job={job} actions={actions} />
        ))}
      </ul>
    </div>
  );
}

function JobItem(props: { job: IJob; actions: IJobsPanelActions }): JSX.Element {
  const { job, actions } = props;
  const name = basename(job.notebook_path ?? job.notebook);
  const output = job.output_path ?? null;
  return (
    <li
      className={`lnb-Job lnb-Job-${job.state}`}
      data-job-id={job.id}
      data-state={job.state}
      aria-label={`Job ${job.id}: ${name}, ${job.state}`}
    >
      <div className="lnb-Job-title">
        <span className="lnb-Job-name" title={job.notebook}>
          {name}
        </span>
        <span className="lnb-Job-state">{job.state}</span>
      </div>
      <div className="lnb-Job-details">
        <span title="Job ID">{job.id}</span>
        {job.kernel && <span title="Kernel">{job.kernel}</span>}
        {job.state === 'running' && job.cells ? (
          <span className="lnb-Job-progress">
            cell {job.cell ?? 0}/{job.cells}
          </span>
        ) : null}
        {job.state === 'scheduled' && job.every ? (
          <span title="Schedule">
            every {job.every}
            {job.next_run ? `, next ${formatTime(job.next_run)}` : ''}
          </span>
        ) : null}
        <span title="Submitted">{formatTime(job.finished ?? job.started ?? job.submitted)}</span>
      </div>
      {job.state === 'running' && job.cells ? (
        <progress max={job.cells} value={job.cell ?? 0} aria-label="Cells run" />
      ) : null}
      {output && (
        <a
          className="lnb-Job-output"
          href="#"
          title={`Open ${output}`}
          onClick={event => {
            event.preventDefault();
            actions.open(output);
          }}
        >
          {basename(output)}
        </a>
      )}
      {job.error && <pre className="lnb-Job-error">{job.error}</pre>}
      {isActive(job) && (
        <Button
          className="jp-mod-styled jp-mod-warn lnb-Job-cancel"
          small={true}
          onClick={() => actions.cancel(job)}
        >
          Cancel
        </Button>
      )}
    </li>
  );
}

function basename(path: string): string {
  return path.split('/').pop() || path;
}

/** Seconds since the epoch or an ISO date, as a number for sorting. */
function timeOf(value: string | number | null | undefined): number {
  if (value === null || value === undefined) {
    return 0;
  }
  return typeof value === 'number' ? value * 1000 : Date.parse(value) || 0;
}

function formatTime(value: string | number | null | undefined): string {
  const time = timeOf(value);
  return time ? new Date(time).toLocaleString() : '';
}
