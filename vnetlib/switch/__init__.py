"""Switch VLANs through a switch daemon (issue #10, item 3) on Open vSwitch."""
