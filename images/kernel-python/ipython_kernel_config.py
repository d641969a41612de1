# System-wide IPython kernel settings of the lab's Python kernel image.
c = get_config()  # noqa: F821 - provided by IPython when it loads this file
# Why a kernel was restarted (out of memory), shown in the notebook: labnotebook_notice.py.
c.InteractiveShellApp.extensions.append("labnotebook_notice")
