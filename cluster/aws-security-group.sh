#!/usr/bin/env bash
# The security group cluster/aws.yaml's nodes use: SSH from SSH_CIDR only (your address
# or your VPN's range), and any traffic between the group's own nodes (Ray, NFS). Ray's
# own default group would open SSH to 0.0.0.0/0. Prints the group id for aws.yaml.
#
#   SSH_CIDR=203.0.113.7/32 VPC_ID=vpc-0123456789abcdef0 bash cluster/aws-security-group.sh
set -euo pipefail
: "${SSH_CIDR:?set SSH_CIDR to the address range allowed to SSH in, e.g. 203.0.113.7/32}"
: "${VPC_ID:?set VPC_ID to the VPC the cluster runs in}"
REGION="${REGION:-us-west-2}"
NAME="${NAME:-orchestrator-cluster}"
case "$SSH_CIDR" in
  0.0.0.0/0|::/0) echo "SSH_CIDR=$SSH_CIDR opens SSH to everyone; give your own range" >&2; exit 2 ;;
esac

group=$(aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC_ID" --group-name "$NAME" \
  --description "orchestrator Ray cluster: SSH from $SSH_CIDR, all traffic within the group" \
  --query GroupId --output text)
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$group" \
  --protocol tcp --port 22 --cidr "$SSH_CIDR" >/dev/null
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$group" \
  --protocol -1 --source-group "$group" >/dev/null
echo "$group"
