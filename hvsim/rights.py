r"""Who the simulation's account is on one node, and what Windows then lets it do over the network.

Every node of a world carries one :class:`AccountRights` (``world.node("HV01").rights``); the
default is what the product documents as required (a domain account in the node's local
Administrators group), so that every existing test keeps its behaviour.  A test makes the account
a non-administrator, or a *local* administrator whose token UAC filters, and the node then answers
as Windows does: ``w:AccessDenied`` on ``root/MSCluster`` (and on ``root/virtualization/v2`` unless
the account is in Hyper-V Administrators), and ``STATUS_ACCESS_DENIED`` on the tree connect to an
admin share (``C$``, ``D$``; :class:`hvsim.samba.SambaServer` ``denied_shares``).

Sources:

* ``uac-wmi``: Microsoft, "User Account Control and WMI"
  (learn.microsoft.com/windows/win32/wmisdk/user-account-control-and-wmi), "Handling Remote
  Connections Under UAC": a *domain* account in the remote computer's local Administrators group is
  not affected by UAC token filtering; a *local* account, even one in Administrators, runs as a
  standard user over the network.
* ``uac-remote``: Microsoft, "Description of User Account Control and remote restrictions"
  (learn.microsoft.com/troubleshoot/windows-server/windows-security/user-account-control-and-remote-restriction):
  a local administrator connecting to ``\\computer\share$`` "will not connect as a full
  administrator"; setting ``HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System\
  LocalAccountTokenFilterPolicy`` to 1 disables the filtering for local accounts; the built-in
  Administrator (RID 500) is not filtered unless ``FilterAdministratorToken`` is set.
* ``hyperv-wmi``: ``reference/hyperv-wmi.md`` §7.5 (all failover-cluster WMI needs local
  Administrators on each node) and §9.1 "Who may do what" (``root/MSCluster``: local
  Administrators on every node; ``root/virtualization/v2``: Hyper-V Administrators or
  Administrators; WinRM's ``RootSDDL``: Administrators or Remote Management Users; UAC remote
  token filtering of local administrator accounts).
* Hyper-V Administrators: "members of this group have complete and unrestricted access to all
  features of Hyper-V" (Microsoft, "Active Directory security groups", Hyper-V Administrators);
  the group grants ``root/virtualization/v2`` but not the admin shares nor ``root/MSCluster``.

Not modelled: WinRM refusing an account that is neither an administrator nor in Remote
Management Users (how that refusal looks on the wire is not captured); the simulator's WinRM
accepts every authenticated account.
"""

from __future__ import annotations

from dataclasses import dataclass

# Namespaces only a full administrator token may use (hyperv-wmi §7.5).
ADMIN_NAMESPACES = ("root/mscluster",)
# Namespaces Hyper-V Administrators may use without the Administrators group.
HYPERV_NAMESPACES = ("root/virtualization/v2",)


def _canonical(namespace: str) -> str:
    return namespace.replace("\\", "/").strip("/").lower()


@dataclass
class AccountRights:
    """The account's memberships on one node, and the node's UAC setting (see the module sources)."""

    # member of the node's local Administrators group (directly or through a domain group)
    administrators: bool = True
    # member of the node's Hyper-V Administrators group
    hyperv_administrators: bool = False
    # a local account of the node (False: a domain account, as the product's documentation asks)
    local_account: bool = False
    # the node's LocalAccountTokenFilterPolicy registry value (0, the Windows default: filter)
    local_account_token_filter_policy: int = 0
    # the built-in Administrator (RID 500), which UAC does not filter by default (uac-remote)
    builtin_administrator: bool = False

    def full_admin_token(self) -> bool:
        """Whether a network logon of the account gets an unfiltered administrator token."""
        if not self.administrators:
            return False
        if not self.local_account or self.builtin_administrator:
            return True
        return self.local_account_token_filter_policy == 1

    def denies_namespace(self, namespace: str) -> bool:
        """Whether WMI refuses the account ``namespace`` (root/cimv2 stays readable: not modelled)."""
        ns = _canonical(namespace)
        if self.full_admin_token():
            return False
        if ns in ADMIN_NAMESPACES:
            return True
        if ns in HYPERV_NAMESPACES:
            return not self.hyperv_administrators
        return False

    def denies_share(self, share: str) -> bool:
        """Whether SMB refuses the tree connect to ``share`` (admin shares ``X$``; not ``IPC$``)."""
        name = share.upper()
        admin_share = name.endswith("$") and name != "IPC$"
        return admin_share and not self.full_admin_token()
