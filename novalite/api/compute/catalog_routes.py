"""Routes of the compute catalog APIs: flavors, key pairs, hosts, quotas and limits."""

from __future__ import annotations

from aiohttp import web

from novalite.api.compute import flavors, hosts, keypairs, quotas, usage

BASE = "/compute/v2.1"


def add_routes(app: web.Application) -> None:
    """Register every catalog route under /compute/v2.1."""
    r = app.router
    b = BASE
    # Flavors, extra specs, access
    r.add_get(f"{b}/flavors", flavors.list_flavors)
    r.add_post(f"{b}/flavors", flavors.create_flavor)
    r.add_get(f"{b}/flavors/detail", flavors.list_flavors_detail)
    r.add_get(f"{b}/flavors/{{flavor_id}}", flavors.show_flavor)
    r.add_put(f"{b}/flavors/{{flavor_id}}", flavors.update_flavor)
    r.add_delete(f"{b}/flavors/{{flavor_id}}", flavors.delete_flavor)
    r.add_post(f"{b}/flavors/{{flavor_id}}/action", flavors.flavor_action)
    r.add_get(f"{b}/flavors/{{flavor_id}}/os-flavor-access", flavors.list_flavor_access)
    r.add_get(f"{b}/flavors/{{flavor_id}}/os-extra_specs", flavors.list_extra_specs)
    r.add_post(f"{b}/flavors/{{flavor_id}}/os-extra_specs", flavors.create_extra_specs)
    r.add_get(f"{b}/flavors/{{flavor_id}}/os-extra_specs/{{key}}", flavors.show_extra_spec)
    r.add_put(f"{b}/flavors/{{flavor_id}}/os-extra_specs/{{key}}", flavors.update_extra_spec)
    r.add_delete(f"{b}/flavors/{{flavor_id}}/os-extra_specs/{{key}}", flavors.delete_extra_spec)
    # Key pairs
    r.add_get(f"{b}/os-keypairs", keypairs.list_keypairs)
    r.add_post(f"{b}/os-keypairs", keypairs.create_keypair)
    r.add_get(f"{b}/os-keypairs/{{name}}", keypairs.show_keypair)
    r.add_delete(f"{b}/os-keypairs/{{name}}", keypairs.delete_keypair)
    # Availability zones, hypervisors, services
    r.add_get(f"{b}/os-availability-zone", hosts.list_zones)
    r.add_get(f"{b}/os-availability-zone/detail", hosts.list_zones_detail)
    r.add_get(f"{b}/os-hypervisors", hosts.list_hypervisors)
    r.add_get(f"{b}/os-hypervisors/detail", hosts.list_hypervisors_detail)
    r.add_get(f"{b}/os-hypervisors/statistics", hosts.hypervisor_statistics)
    r.add_get(f"{b}/os-hypervisors/{{hypervisor_id}}", hosts.show_hypervisor)
    r.add_get(f"{b}/os-hypervisors/{{hypervisor_id}}/uptime", hosts.hypervisor_uptime)
    r.add_get(f"{b}/os-hypervisors/{{pattern}}/search", hosts.search_hypervisors)
    r.add_get(f"{b}/os-hypervisors/{{pattern}}/servers", hosts.hypervisor_servers)
    r.add_get(f"{b}/os-aggregates", hosts.list_aggregates)
    r.add_get(f"{b}/os-services", hosts.list_services)
    r.add_put(f"{b}/os-services/{{service_id}}", hosts.update_service)
    # Quotas and limits
    r.add_get(f"{b}/os-quota-sets/{{project_id}}", quotas.show_quota_set)
    r.add_put(f"{b}/os-quota-sets/{{project_id}}", quotas.update_quota_set)
    r.add_delete(f"{b}/os-quota-sets/{{project_id}}", quotas.delete_quota_set)
    r.add_get(f"{b}/os-quota-sets/{{project_id}}/defaults", quotas.show_defaults)
    r.add_get(f"{b}/os-quota-sets/{{project_id}}/detail", quotas.show_quota_set_detail)
    r.add_get(f"{b}/limits", quotas.show_limits)
    r.add_get(f"{b}/os-quota-class-sets/{{class_name}}", quotas.show_quota_class_set)
    r.add_put(f"{b}/os-quota-class-sets/{{class_name}}", quotas.update_quota_class_set)
    r.add_get(f"{b}/os-simple-tenant-usage", usage.list_usages)
    r.add_get(f"{b}/os-simple-tenant-usage/{{tenant_id}}", usage.show_usage)
