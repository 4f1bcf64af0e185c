// libibverbs for Swift: verbs.h itself, and functions for what it defines as macros or static
// inline functions (which Swift cannot call). Each forwards to the verbs call of the same name.
#ifndef RINGMASTER_CVERBS_H
#define RINGMASTER_CVERBS_H

#include <infiniband/verbs.h>

struct ibv_device **rm_ibv_get_device_list(int *count);
int rm_ibv_query_port(struct ibv_context *context, uint8_t port, struct ibv_port_attr *attributes);
int rm_ibv_query_gid_ex(struct ibv_context *context, uint32_t port, uint32_t index, struct ibv_gid_entry *entry);
struct ibv_mr *rm_ibv_reg_mr(struct ibv_pd *pd, void *address, size_t length, int access);
int rm_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *request, struct ibv_send_wr **bad);
int rm_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *request, struct ibv_recv_wr **bad);
int rm_ibv_poll_cq(struct ibv_cq *cq, int count, struct ibv_wc *completions);
int rm_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only);

#endif
