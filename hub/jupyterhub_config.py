# The lab hub's JupyterHub configuration. Every value here is the lab's default; the operator
# chooses a few things with `make up VAR=...` (declared in labnotebook/hub/settings_schema.py,
# read by LabSettings), and an admin can override anything below in
# /srv/state/jupyterhub_config.py (kept on the state volume).
import os
import sys

from labnotebook.hub import authenticator, tls
from labnotebook.hub.gpu_pages import GpuPages
from labnotebook.hub.settings import (
    BROKER_SOCKET,
    HUB_OVERRIDES,
    PROXY_PID_FILE,
    STATE_DIR,
    LabSettings,
)

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
lab = LabSettings.from_env()

# -- where the hub listens, and its state ------------------------------------------------------
# The proxy listens on 8000 in the container; `make up PORT=...` publishes it on the host.
c.JupyterHub.bind_url = f"{'http' if lab.plain_http else 'https'}://:8000"
if not lab.plain_http:
    cert = tls.certificate(lab.tls_hostnames)
    c.JupyterHub.ssl_cert = str(cert.cert)
    c.JupyterHub.ssl_key = str(cert.key)
if lab.subdomain_host:
    # Isolates members' servers from the hub and from each other (see the README's security
    # model): JupyterHub's own mechanism, one origin per user.
    c.JupyterHub.subdomain_host = lab.subdomain_host
c.JupyterHub.db_url = f"sqlite:///{STATE_DIR}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(STATE_DIR / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(PROXY_PID_FILE)
# Users' servers are processes of this container: a new container cannot adopt them.
c.JupyterHub.cleanup_servers = True

# -- who may log in: sign-up, admin approval, a setup token for the first admin -------------
c.JupyterHub.authenticator_class = authenticator.LabAuthenticator
if not os.path.isfile(os.path.join(authenticator.TEMPLATES, "signup.html")):
    # Without them JupyterHub silently serves NativeAuthenticator's stock pages, which have
    # no setup-token field: nobody could ever claim the admin account.
    sys.exit(f"The lab's page templates are missing from {authenticator.TEMPLATES}: reinstall.")
c.JupyterHub.template_paths = authenticator.TEMPLATE_PATHS
# Every page names the lab (title bar, headings): LAB_TITLE, or the LAB name.
# Who holds which GPU: a line on members' home pages, the table on the admin page.
c.JupyterHub.template_vars = {"lab_title": lab.title, "lab_gpus": GpuPages(str(BROKER_SOCKET))}
c.Authenticator.admin_users = {"admin"}
# Password length, lockout and rate limits: LabAuthenticator's own defaults (its traits' help
# says what each does), so they are not repeated here. They count per client address:
c.LabAuthenticator.client_address_header = lab.client_address_header
c.LabAuthenticator.trusted_proxies = lab.trusted_proxies
c.LabAuthenticator.private_homes = lab.private_homes

# -- users' servers: in this container, as the users, in their homes ------------------------
c.JupyterHub.spawner_class = "labnotebook.hub.spawner.LabSpawner"
c.LabSpawner.private_homes = lab.private_homes
c.Spawner.cmd = [f"{sys.prefix}/bin/jupyterhub-singleuser"]
c.Spawner.notebook_dir = "~"
c.Spawner.default_url = "/lab"
# The first start of JupyterLab builds its workspace; give slow disks time.
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

# -- idle culling ---------------------------------------------------------------------------
# Idle kernels are culled by each user's server (KERNEL_IDLE_TIMEOUT, see startup.py); idle
# servers by jupyterhub-idle-culler, a hub service with only the scopes it needs, running as
# `nobody`.
if lab.server_idle_timeout:
    culler = [sys.executable, "-m", "jupyterhub_idle_culler"]
    culler += [f"--timeout={lab.server_idle_timeout}", "--cull-every=300"]
    if lab.server_max_age:
        culler.append(f"--max-age={lab.server_max_age}")
    c.JupyterHub.services = [{"name": "idle-culler", "command": culler, "user": "nobody"}]
    c.JupyterHub.load_roles = [
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    ]

# -- the admin's own additions, kept on the state volume ------------------------------------
# Run here rather than with load_subconfig (which replaces whole values), so that e.g.
# c.Authenticator.admin_users.add("pi") adds to the lab's set.
if HUB_OVERRIDES.exists():
    exec(compile(HUB_OVERRIDES.read_text(), str(HUB_OVERRIDES), "exec"))
