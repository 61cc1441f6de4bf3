# autoscale-etcd node images with etcd, netdata, the agent's venv and the systemd units,
# so a replacement node skips every install at boot. One template, one way of provisioning,
# two sources (build one at a time with -only):
#
#   openstack.ubuntu   Ubuntu 24.04
#   openstack.rocky    Rocky Linux 9, or AlmaLinux 9 with -var ssh_username=almalinux
#
#   packer build -only=openstack.ubuntu -var source_image="Ubuntu 24.04" -var flavor=m1.small \
#       -var 'networks=["<network uuid>"]' packer/node-image.pkr.hcl
#   packer build -only=openstack.rocky -var source_image="Rocky-9-GenericCloud" ... (the same)
#
# Credentials are the OpenStack builder's usual ones: OS_CLOUD (clouds.yaml) or the
# OS_* variables of an openrc file. Nothing secret is written in this file.
# Written for Packer 1.6+ (the openstack builder is built in up to 1.9; later
# releases need `packer plugins install github.com/hashicorp/openstack`). Packer 1.6 lets a
# build's source block only add arguments the shared source leaves unset, not override them.

variable "source_image" {
  type        = string
  description = "Name of the Glance image to start from: an Ubuntu 24.04 cloud image for openstack.ubuntu, a Rocky 9 or Alma 9 GenericCloud image for openstack.rocky."
}

variable "flavor" {
  type        = string
  description = "Nova flavor of the build server."
}

variable "networks" {
  type        = list(string)
  default     = []
  description = "Network UUIDs for the build server (may stay empty when the project has one network)."
}

variable "image_name" {
  type        = string
  default     = ""
  description = "Name of the image made; default autoscale-etcd-<ubuntu-24.04|rocky-9>-etcd<version>-<time>."
}

variable "ssh_username" {
  type        = string
  default     = ""
  description = "User of the source image; default ubuntu (openstack.ubuntu), rocky (openstack.rocky)."
}

variable "floating_ip_network" {
  type        = string
  default     = ""
  description = "External network for a floating IP when the build host cannot reach the server directly."
}

variable "security_groups" {
  type        = list(string)
  default     = []
  description = "Security groups of the build server; they must let SSH in from the build host."
}

variable "etcd_version" {
  type        = string
  default     = "3.5.17"
  description = "etcd 3.5.x release; its sha256 must be in packer/files/etcd-sha256sums.txt."
}

variable "etcd_sha256" {
  type        = string
  default     = ""
  description = "The release tarball's sha256, for a version not listed in etcd-sha256sums.txt."
}

locals {
  built_at   = formatdate("YYYYMMDD-hhmm", timestamp())
  upload_dir = "/tmp/autoscale-etcd"
  # per source of the build: the release in the image's name, the cloud image's user
  releases = { ubuntu = "ubuntu-24.04", rocky = "rocky-9" }
  ssh_usernames = {
    ubuntu = var.ssh_username != "" ? var.ssh_username : "ubuntu"
    rocky  = var.ssh_username != "" ? var.ssh_username : "rocky"
  }
  image_names = {
    for name, release in local.releases : name => (
      var.image_name != "" ? var.image_name : "autoscale-etcd-${release}-etcd${var.etcd_version}-${local.built_at}"
    )
  }
}

source "openstack" "node" {
  source_image_name   = var.source_image
  flavor              = var.flavor
  networks            = var.networks
  floating_ip_network = var.floating_ip_network
  security_groups     = var.security_groups
  ssh_timeout         = "15m"
  image_tags          = ["autoscale-etcd"]
  metadata = {
    autoscale_etcd_etcd_version = var.etcd_version
  }
}

build {
  source "source.openstack.node" {
    name         = "ubuntu"
    image_name   = local.image_names.ubuntu
    ssh_username = local.ssh_usernames.ubuntu
  }

  source "source.openstack.node" {
    name         = "rocky"
    image_name   = local.image_names.rocky
    ssh_username = local.ssh_usernames.rocky
  }

  provisioner "shell" {
    inline = [
      "cloud-init status --wait >/dev/null 2>&1 || true",
      "rm -rf ${local.upload_dir} && mkdir -p ${local.upload_dir}/scripts ${local.upload_dir}/units",
    ]
  }

  provisioner "file" {
    source      = "${path.root}/scripts/"
    destination = "${local.upload_dir}/scripts"
  }

  provisioner "file" {
    source      = "${path.root}/files/etcd-sha256sums.txt"
    destination = "${local.upload_dir}/etcd-sha256sums.txt"
  }

  # The one place dependency pins live; install-agent-venv.sh reads them from it.
  provisioner "file" {
    source      = "${path.root}/../pyproject.toml"
    destination = "${local.upload_dir}/pyproject.toml"
  }

  # The units the Pulumi program's nodes run; written once, in infra/units/.
  provisioner "file" {
    source      = "${path.root}/../infra/units/"
    destination = "${local.upload_dir}/units"
  }

  provisioner "shell" {
    environment_vars = [
      "AUTOSCALE_ROOT=/",
      "AUTOSCALE_SOURCE=${local.upload_dir}",
      "ETCD_VERSION=${var.etcd_version}",
      "ETCD_SHA256=${var.etcd_sha256}",
      "IMAGE_NAME=${local.image_names[source.name]}",
      "IMAGE_BUILT_AT=${local.built_at}",
    ]
    execute_command = "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} sh -eu {{ .Path }}"
    inline = [
      "sh ${local.upload_dir}/scripts/install-base-tools.sh",
      "sh ${local.upload_dir}/scripts/install-etcd.sh",
      "sh ${local.upload_dir}/scripts/install-netdata.sh",
      "sh ${local.upload_dir}/scripts/install-agent-venv.sh",
      "sh ${local.upload_dir}/scripts/install-units.sh",
      "sh ${local.upload_dir}/scripts/write-image-release.sh",
      "sh ${local.upload_dir}/scripts/finish-image.sh",
      "rm -rf ${local.upload_dir}",
    ]
  }

  post-processor "manifest" {
    output     = "build/packer-manifest.json"
    strip_path = true
  }
}
