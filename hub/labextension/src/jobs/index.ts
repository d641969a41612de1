/**
 * Notebook jobs in JupyterLab: "Run as job" for the open notebook (its toolbar, the command
 * palette, the Run menu) and the Jobs panel in the left sidebar.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  Notification,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { listIcon } from '@jupyterlab/ui-components';

import { cancelJob, IJob, submitJob } from './api';
import { RunAsJobBody } from './dialog';
import { JobsModel } from './model';
import { JobsPanel } from './panel';

const PLUGIN_ID = '@labnotebook/lab:jobs';

export namespace CommandIDs {
  export const runAsJob = 'labnotebook:run-as-job';
  export const showJobs = 'labnotebook:show-jobs';
  export const refreshJobs = 'labnotebook:refresh-jobs';
}

const CATEGORY = 'Lab notebook';

export const jobsPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Run a notebook as a job of the lab, and list your jobs.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, IMainMenu, ILayoutRestorer, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    palette: ICommandPalette | null,
    mainMenu: IMainMenu | null,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const settings = app.serviceManager.serverSettings;
    const model = new JobsModel(settings);

    const panel = new JobsPanel(model, {
      open: path => void app.commands.execute('docmanager:open', { path }),
      cancel: job => void cancel(job)
    });
    panel.title.icon = listIcon;
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, 'labnotebook-jobs');

    async function cancel(job: IJob): Promise<void> {
      const answer = await showDialog({
        title: 'Cancel the job?',
        body: `Job ${job.id} (${job.notebook}) stops now; the notebook keeps what it has run.`,
        buttons: [
          Dialog.cancelButton({ label: 'Keep running' }),
          Dialog.warnButton({ label: 'Cancel job' })
        ]
      });
      if (!answer.button.accept) {
        return;
      }
      try {
        await cancelJob(settings, job.id);
      } catch (error) {
        await showErrorMessage('The job was not cancelled', error as Error);
      }
      await model.refresh();
    }

    async function runAsJob(notebook: NotebookPanel): Promise<void> {
      const context = notebook.context;
      // The job runs the file, so it must be what the member sees.
      await context.ready;
      await context.save();
      await app.serviceManager.kernelspecs.ready;
      const specs = app.serviceManager.kernelspecs.specs;
      const own =
        notebook.sessionContext.session?.kernel?.name ??
        (context.model.getMetadata('kernelspec') as { name?: string } | undefined)?.name ??
        null;
      const body = new RunAsJobBody(context.path, specs, own);
      const answer = await showDialog({
        title: 'Run as job',
        body,
        buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run' })],
        focusNodeSelector: 'select'
      });
      if (!answer.button.accept || !answer.value) {
        return;
      }
      let job: IJob;
      try {
        job = await submitJob(settings, answer.value);
      } catch (error) {
        await showErrorMessage('The job was not submitted', error as Error);
        return;
      }
      Notification.success(`Job ${job.id} submitted: ${context.path}`, {
        autoClose: 5000
      });
      app.shell.activateById(panel.id);
      await model.refresh();
    }

    app.commands.addCommand(CommandIDs.runAsJob, {
      // A word in the toolbar, not an icon: the toolbar's icons for running cells look alike.
      label: args => (args.toolbar ? 'Run as job' : 'Run as Job…'),
      caption:
        'Run this notebook to the end in a container of its own, without keeping the page open',
      isEnabled: () => notebooks.currentWidget !== null,
      execute: () => {
        const current = notebooks.currentWidget;
        if (current) {
          return runAsJob(current);
        }
      }
    });
    app.commands.addCommand(CommandIDs.showJobs, {
      label: 'Show Jobs',
      caption: 'The list of your notebook jobs',
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.refreshJobs, {
      label: 'Refresh Jobs',
      execute: () => model.refresh()
    });
    notebooks.currentChanged.connect(() =>
      app.commands.notifyCommandChanged(CommandIDs.runAsJob)
    );

    for (const command of Object.values(CommandIDs)) {
      palette?.addItem({ command, category: CATEGORY });
    }
    mainMenu?.runMenu.addGroup([{ command: CommandIDs.runAsJob }], 1000);

    if (settingRegistry) {
      void settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          const apply = () => {
            model.activeInterval = loaded.get('activeRefreshSeconds').composite as number;
            model.idleInterval = loaded.get('idleRefreshSeconds').composite as number;
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(reason => console.error(`${PLUGIN_ID}: cannot load the settings`, reason));
    }
  }
};
