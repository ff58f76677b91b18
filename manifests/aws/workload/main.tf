# One workload's own IAM role, for namespaces that read with each workload's
# identity (sm-injector.io/aws-identity: serviceaccount): sm-injector asks the
# API server for a token of the workload's ServiceAccount (audience
# sts.amazonaws.com) and assumes this role with it, so IAM decides what the
# workload may read and CloudTrail names it
# (assumed-role/<role>/<namespace>.<serviceaccount>).
#   terraform apply -var cluster_oidc_provider_arn=... \
#     -var namespace=arrakis -var service_account=arrakis-bot -var secret_prefix=arrakis
# then annotate the workload's ServiceAccount:
#   eks.amazonaws.com/role-arn: <output role_arn>
# sm-injector's own role needs no Secrets Manager permission in this mode
# (AssumeRoleWithWebIdentity is an unsigned call: it needs no permission at all).

terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}

variable "cluster_oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider"
  type        = string
}

variable "namespace" {
  description = "The workload's namespace"
  type        = string
}

variable "service_account" {
  description = "The workload's ServiceAccount"
  type        = string
}

variable "secret_prefix" {
  description = "Secrets whose name starts with this prefix and a slash may be read"
  type        = string
}

variable "role_name" {
  type    = string
  default = null
}

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  oidc_provider = element(split("oidc-provider/", var.cluster_oidc_provider_arn), 1)
}

# Only tokens of this one ServiceAccount, for STS, may assume the role: the
# tokens sm-injector requests (audience sts.amazonaws.com, 600 s).
data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.cluster_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_provider}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_provider}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "read" {
  statement {
    sid       = "ReadTheWorkloadsSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = ["arn:aws:secretsmanager:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:secret:${var.secret_prefix}/*"]
  }
  statement {
    sid       = "BatchGetChecksGetSecretValueOnEachSecret"
    actions   = ["secretsmanager:BatchGetSecretValue"]
    resources = ["*"]
  }
}

resource "aws_iam_role" "workload" {
  name               = coalesce(var.role_name, "${var.namespace}-${var.service_account}")
  assume_role_policy = data.aws_iam_policy_document.trust.json
}

resource "aws_iam_role_policy" "read" {
  name   = "secretsmanager-read"
  role   = aws_iam_role.workload.id
  policy = data.aws_iam_policy_document.read.json
}

output "role_arn" {
  value = aws_iam_role.workload.arn
}
