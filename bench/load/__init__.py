"""Load benchmark: concurrent SPs creating and deleting small VNets on a lab."""
