# Hub targets: make up, down, logs, backup, restore, upgrade (see README).
# Included by the root Makefile, which defines BASE_IMAGE, KERNEL_IMAGE, HUB_IMAGE, the image
# targets and HUB_SETTINGS: the name of every `make up` setting, from hub/settings_schema.py
# (docs/settings.md lists them). Every setting can be given on the command line (make up
# PORT=8443 ...); all names derive from LAB, so tests run a second hub with
# LAB=labnotebook-test-xyz PORT=....
# Every setting is handed to hub/lab.sh per command; an unset one is passed empty and lab.sh
# applies the schema's default. make holds no defaults but those of the images it builds: an
# exported default would also reach every process `make` starts (`make test` too), and a
# nested `make up LAB=x` would inherit HOMES_VOLUME=labnotebook-homedirs instead of deriving
# its own.
LAB_ENV = $(foreach setting,$(HUB_SETTINGS),$(setting)="$($(setting))")

.PHONY: up down logs backup backup-schedule restore upgrade import migrate settings hub-image \
	hub-image-if-missing

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

backup-schedule:
	@$(LAB_ENV) hub/lab.sh backup-schedule

import: hub-image-if-missing
	@$(LAB_ENV) hub/lab.sh import

migrate: images-if-missing hub-image-if-missing
	@$(LAB_ENV) hub/lab.sh migrate
