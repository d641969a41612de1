# Hub targets: make up, down, logs, backup, restore, upgrade (see README).
# Included by the root Makefile, which defines BASE_IMAGE, KERNEL_IMAGE, HUB_IMAGE and the
# image targets. Every setting can be given on the command line (make up PORT=8443 ...); all
# names derive from LAB, so tests run a second hub with LAB=labnotebook-test-xyz PORT=....
# Every `make up` setting, handed to hub/lab.sh per command; an unset one is passed empty and
# lab.sh applies its default. The defaults live there only (the README's table lists them),
# not here: an exported default would also reach every process `make` starts (`make test`
# too), and a nested `make up LAB=x` would inherit HOMES_VOLUME=labnotebook-homedirs instead
# of deriving its own.
HUB_SETTINGS := LAB LAB_TITLE PORT BIND HUB_HOSTNAME NETWORK HOMES_VOLUME STATE_VOLUME \
	READONLY_VOLUME SSL_CERT SSL_KEY PLAIN_HTTP PUBLIC_URL TLS_HOSTNAMES SUBDOMAIN_HOST \
	ADMIN_SUDO_NOPASSWD PRIVATE_HOMES KERNEL_IDLE_TIMEOUT SERVER_IDLE_TIMEOUT SERVER_MAX_AGE \
	KERNEL_MEMORY KERNEL_CPUS MEMBER_MEMORY HUB_MEMORY HUB_PIDS LOG_MAX_SIZE \
	HOMES_PATH CLIENT_ADDRESS_HEADER TRUSTED_PROXIES BUILD_QUOTA BUILD_DOCKERFILE BROKER_VOLUME \
	DOCKER_SOCKET HUB_IMAGE KERNEL_IMAGE BACKUP_DIR BACKUP FORCE READY_TIMEOUT TAIL FOLLOW
LAB_ENV = $(foreach setting,$(HUB_SETTINGS),$(setting)="$($(setting))")

.PHONY: up down logs backup restore upgrade hub-image hub-image-if-missing

hub-image: base-image
	images/build.sh hub $(HUB_IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE)

hub-image-if-missing: base-image
	@docker image inspect $(HUB_IMAGE) >/dev/null 2>&1 || $(MAKE) --no-print-directory hub-image

up: images-if-missing hub-image-if-missing
	@$(LAB_ENV) hub/lab.sh up

down:
	@$(LAB_ENV) hub/lab.sh down

logs:
	@$(LAB_ENV) hub/lab.sh logs

backup:
	@$(LAB_ENV) hub/lab.sh backup

restore: hub-image-if-missing
	@$(LAB_ENV) hub/lab.sh restore

upgrade: images-if-missing hub-image
	@$(LAB_ENV) hub/lab.sh upgrade
