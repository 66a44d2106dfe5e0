/*
 * cidr: network addresses: ranges for registration.allow (DESIGN §8: a registered URL must fall
 * inside one, so the admin API cannot be used to point the gateway at arbitrary hosts), and
 * address equality. Pure; no allocation.
 */
#ifndef GW_CIDR_H
#define GW_CIDR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct gw_cidr {
    int family;       /* AF_INET or AF_INET6 */
    uint8_t prefix;   /* 0..32 or 0..128 */
    uint8_t addr[16]; /* network byte order, host bits cleared */
} gw_cidr_t;

/** Parses "10.0.0.0/8", "::1/128" or a bare address (a /32 or /128). Returns false when the text
 * is not a valid range; host bits set beyond the prefix are an error too ("10.0.0.1/8" is almost
 * always a typo for a different range). */
bool gw_cidr_parse(const char *text, gw_cidr_t *out);

/** True when `sa` falls inside `c`. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is matched as
 * the IPv4 address it carries. */
bool gw_cidr_match(const gw_cidr_t *c, const struct sockaddr *sa);

/** True when a and b are the same IPv4 or IPv6 address and port (padding and, for IPv6,
 * flow info are ignored; other families compare byte for byte). */
bool gw_sockaddr_equal(const struct sockaddr_storage *a, socklen_t alen,
                       const struct sockaddr_storage *b, socklen_t blen);

#endif
