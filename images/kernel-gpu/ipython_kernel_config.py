# The lab's GPU kernel image: report at start whether this kernel has GPUs (labnotebook_gpu).
# System-wide (/etc/ipython), so it holds for every member; appended, so a member's own
# exec_lines in their profile still run.
c = get_config()  # noqa: F821 - the same object as above when appended to the base image's file
c.InteractiveShellApp.exec_lines.append("__import__('labnotebook_gpu').install(get_ipython())")
