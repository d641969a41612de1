/**
 * The "Run as job" dialog: which kernel, and papermill parameters (optional).
 */
import { Dialog } from '@jupyterlab/apputils';
import { KernelSpec } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { ISubmitRequest, parameterValue } from './api';

export class RunAsJobBody
  extends Widget
  implements Dialog.IBodyWidget<ISubmitRequest>
{
  constructor(path: string, specs: KernelSpec.ISpecModels | null, kernel: string | null) {
    super();
    this._path = path;
    this.addClass('lnb-RunAsJob');

    const intro = document.createElement('p');
    intro.textContent =
      `${path} runs to the end in a container of its own, as you, with its folder as the ` +
      'working folder; closing this page or stopping your server does not stop it. The ' +
      'executed notebook is written beside it under a new name.';
    this.node.appendChild(intro);

    const kernelLabel = document.createElement('label');
    kernelLabel.textContent = 'Kernel';
    this._kernel = document.createElement('select');
    this._kernel.className = 'jp-mod-styled';
    this._kernel.setAttribute('aria-label', 'Kernel');
    const names = Object.keys(specs?.kernelspecs ?? {}).sort();
    if (kernel && !names.includes(kernel)) {
      // The notebook's kernel is not one this server knows: offer it anyway, the backend
      // says what is wrong with it.
      names.unshift(kernel);
    }
    for (const name of names) {
      const option = document.createElement('option');
      option.value = name;
      option.textContent = specs?.kernelspecs[name]?.display_name ?? name;
      option.selected = name === (kernel ?? specs?.default);
      this._kernel.appendChild(option);
    }
    kernelLabel.appendChild(this._kernel);
    this.node.appendChild(kernelLabel);

    const fieldset = document.createElement('fieldset');
    const legend = document.createElement('legend');
    legend.textContent = 'Parameters (optional)';
    fieldset.appendChild(legend);
    const help = document.createElement('p');
    help.className = 'lnb-RunAsJob-help';
    help.textContent =
      'They replace the values of the cell tagged "parameters", as papermill -p does: ' +
      '3, 0.5, True, False, None, or text.';
    fieldset.appendChild(help);
    this._rows = document.createElement('div');
    fieldset.appendChild(this._rows);
    const add = document.createElement('button');
    add.type = 'button';
    add.className = 'jp-mod-styled jp-mod-reject';
    add.textContent = 'Add parameter';
    add.addEventListener('click', () => this._addRow());
    fieldset.appendChild(add);
    this.node.appendChild(fieldset);
  }

  getValue(): ISubmitRequest {
    const parameters: Record<string, unknown> = {};
    for (const row of Array.from(this._rows.children)) {
      const [name, value] = Array.from(row.querySelectorAll('input')) as HTMLInputElement[];
      const key = name.value.trim();
      if (key === '' && value.value.trim() === '') {
        continue;
      }
      // An empty name is sent as it is: the server's refusal says what to do.
      parameters[key] = parameterValue(value.value);
    }
    return { path: this._path, kernel: this._kernel.value || null, parameters };
  }

  private _addRow(): void {
    const row = document.createElement('div');
    row.className = 'lnb-RunAsJob-parameter';
    const index = this._rows.children.length + 1;
    const name = document.createElement('input');
    name.className = 'jp-mod-styled';
    name.placeholder = 'name';
    name.setAttribute('aria-label', `Parameter ${index} name`);
    const value = document.createElement('input');
    value.className = 'jp-mod-styled';
    value.placeholder = 'value';
    value.setAttribute('aria-label', `Parameter ${index} value`);
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'jp-mod-styled jp-mod-reject';
    remove.textContent = 'Remove';
    remove.setAttribute('aria-label', `Remove parameter ${index}`);
    remove.addEventListener('click', () => row.remove());
    row.append(name, value, remove);
    this._rows.appendChild(row);
    name.focus();
  }

  private _path: string;
  private _kernel: HTMLSelectElement;
  private _rows: HTMLDivElement;
}
