// Package wgnl configures kernel WireGuard devices through the generic
// netlink family "wireguard" (include/uapi/linux/wireguard.h): its two
// commands, WG_CMD_SET_DEVICE and WG_CMD_GET_DEVICE, encoded on
// vishvananda/netlink's nl package, so nsmfwd needs no wgctrl. Creating
// and deleting the devices themselves is rtnetlink's business (link kind
// "wireguard").
package wgnl
