# Hub targets: make up, down, logs, backup, restore, upgrade (see README).
