# The move from a lab of the original labnotebook (make migrate FROM_HOMES=... FROM_ETC=...).
# Sourced by hub/lab.sh, whose helpers and settings it uses.

cmd_migrate() {
    die "make migrate is not built yet"
}
