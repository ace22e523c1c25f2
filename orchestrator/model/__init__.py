"""Pure logic: numbers in, numbers or decisions out. Nothing here does I/O or imports libvirt."""
