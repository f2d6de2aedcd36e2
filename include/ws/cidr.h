/* Address ranges for trusted_proxies: "10.0.0.0/8", "2001:db8::/32", or a single address.
 * Parsing and matching only; no I/O. */
#ifndef WS_CIDR_H
#define WS_CIDR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct ws_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned bits; /* prefix length */
};

/* Parses text ("addr" or "addr/bits"). 0, or WS_E_INVAL for anything else. */
int ws_cidr_parse(const char *text, struct ws_cidr *out);

/* True when sa (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts as IPv4) is in net. */
bool ws_cidr_match(const struct ws_cidr *net, const struct sockaddr *sa);

/* Parses a textual address (IPv4, IPv6, or IPv6 in brackets) into a sockaddr with port 0.
 * 0, or WS_E_INVAL. */
int ws_cidr_address(const char *text, size_t len, struct sockaddr_storage *out);

#endif
