"""Virtual machines as virtual nodes: guest images, libvirt domains, the libvirt daemons."""
