#!/usr/bin/env bash
# The network cluster/gcp.yaml's nodes join: SSH from SSH_CIDR only (your address or
# your VPN's range), and any traffic between the network's own nodes (Ray, NFS). The
# default network's default-allow-ssh rule would open SSH to 0.0.0.0/0.
#
#   SSH_CIDR=203.0.113.7/32 bash cluster/gcp-firewall.sh
set -euo pipefail
: "${SSH_CIDR:?set SSH_CIDR to the address range allowed to SSH in, e.g. 203.0.113.7/32}"
NETWORK="${NETWORK:-orchestrator}"
REGION="${REGION:-us-central1}"
RANGE="${RANGE:-10.128.0.0/20}"
case "$SSH_CIDR" in
  0.0.0.0/0|::/0) echo "SSH_CIDR=$SSH_CIDR opens SSH to everyone; give your own range" >&2; exit 2 ;;
esac

gcloud compute networks create "$NETWORK" --subnet-mode=custom
gcloud compute networks subnets create "$NETWORK" --network="$NETWORK" --region="$REGION" --range="$RANGE"
gcloud compute firewall-rules create "$NETWORK-ssh" --network="$NETWORK" \
  --allow=tcp:22 --source-ranges="$SSH_CIDR"
gcloud compute firewall-rules create "$NETWORK-internal" --network="$NETWORK" \
  --allow=tcp,udp,icmp --source-ranges="$RANGE"
