# Hub targets: make up, down, logs, backup, restore, upgrade (see README).
# Included by the root Makefile, which defines BASE_IMAGE, KERNEL_IMAGE, HUB_IMAGE and the
# image targets. Every setting can be given on the command line (make up PORT=8443 ...); all
# names derive from LAB, so tests run a second hub with LAB=labnotebook-test-xyz PORT=....
LAB ?= labnotebook
# The lab's name on the hub's pages; empty: LAB.
LAB_TITLE ?=
PORT ?= 8000
# Host address the hub is published on; empty: all addresses.
BIND ?=
NETWORK ?= $(LAB)
HOMES_VOLUME ?= $(LAB)-homedirs
STATE_VOLUME ?= $(LAB)-state
READONLY_VOLUME ?= $(LAB)-readonly
# The operator's certificate and key (host paths); empty: a self-signed pair in the state volume.
SSL_CERT ?=
SSL_KEY ?=
# yes: serve plain HTTP (only behind a proxy that terminates TLS).
PLAIN_HTTP ?=
BACKUP_DIR ?= backups
BACKUP ?=
# make logs: how many lines of the past ("all" for everything), and whether to follow.
TAIL ?= 200
FOLLOW ?= yes
# Passed to hub/lab.sh per command, not exported: an exported default would reach every
# process `make` starts (`make test` too), and a nested `make up LAB=x` would then inherit
# HOMES_VOLUME=labnotebook-homedirs from its parent instead of deriving its own.
LAB_ENV = LAB="$(LAB)" PORT="$(PORT)" BIND="$(BIND)" NETWORK="$(NETWORK)" \
	HOMES_VOLUME="$(HOMES_VOLUME)" STATE_VOLUME="$(STATE_VOLUME)" READONLY_VOLUME="$(READONLY_VOLUME)" SSL_CERT="$(SSL_CERT)" \
	SSL_KEY="$(SSL_KEY)" PLAIN_HTTP="$(PLAIN_HTTP)" BACKUP_DIR="$(BACKUP_DIR)" \
	BACKUP="$(BACKUP)" HUB_IMAGE="$(HUB_IMAGE)" KERNEL_IMAGE="$(KERNEL_IMAGE)" \
	TAIL="$(TAIL)" FOLLOW="$(FOLLOW)" LAB_TITLE="$(LAB_TITLE)"

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
