/**
 * The lab inside JupyterLab (labnotebook): one prebuilt extension, one plugin per feature.
 * Each talks to the lab's server extension under /labnotebook/api (src/api.ts).
 */
import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { jobsPlugin } from './jobs';

const plugins: JupyterFrontEndPlugin<any>[] = [jobsPlugin];

export default plugins;
