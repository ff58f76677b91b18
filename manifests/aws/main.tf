# The IAM role sm-injector assumes through IRSA: read-only access to the
# secrets under one name prefix, with exactly the actions the code calls.
#   terraform apply -var cluster_oidc_provider_arn=... -var secret_prefix=arrakis
# then put the output role_arn in the ServiceAccount's
# eks.amazonaws.com/role-arn annotation (manifests/serviceaccount.yaml).
# The same role for one workload (namespaces with sm-injector.io/aws-identity:
# serviceaccount): -var namespace=<ns> -var service_account=<sa>
# -var role_name=<name>, annotating that workload's ServiceAccount.

terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}

variable "cluster_oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider"
  type        = string
}

variable "secret_prefix" {
  description = "Secrets whose name starts with this prefix and a slash may be read (for example a namespace per prefix)"
  type        = string
}

variable "namespace" {
  type    = string
  default = "sm-injector"
}

variable "service_account" {
  type    = string
  default = "sm-injector"
}

variable "role_name" {
  type    = string
  default = "sm-injector"
}

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  # arn:aws:iam::<account>:oidc-provider/<issuer host and path>
  oidc_provider = element(split("oidc-provider/", var.cluster_oidc_provider_arn), 1)
}

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
    sid       = "ReadTheSecretsUnderThePrefix"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = ["arn:aws:secretsmanager:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:secret:${var.secret_prefix}/*"]
  }
  statement {
    sid       = "BatchGetChecksGetSecretValueOnEachSecret"
    actions   = ["secretsmanager:BatchGetSecretValue"]
    resources = ["*"]
  }
}

resource "aws_iam_role" "sm_injector" {
  name               = var.role_name
  assume_role_policy = data.aws_iam_policy_document.trust.json
}

resource "aws_iam_role_policy" "read" {
  name   = "secretsmanager-read"
  role   = aws_iam_role.sm_injector.id
  policy = data.aws_iam_policy_document.read.json
}

output "role_arn" {
  value = aws_iam_role.sm_injector.arn
}
