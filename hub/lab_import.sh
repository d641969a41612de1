# Host data into the lab (make import SRC=... DEST=readonly/NAME). Sourced by hub/lab.sh,
# whose helpers and settings it uses.

cmd_import() {
    die "make import is not built yet"
}
