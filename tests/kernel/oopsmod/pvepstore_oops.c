// SPDX-License-Identifier: GPL-2.0
/*
 * pvepstore_oops - trigger kernel Oopses/warnings on demand for the pvepstore
 * test harness (Debian kernels ship no lkdtm).
 *
 * Creates /proc/pvepstore_oops (write-only, root). Writing
 *   "oops"  -> NULL pointer dereference inside the write handler (process
 *              context, IRQs on, no locks held): the writing process is
 *              killed, the kernel keeps running, kmsg_dump(KMSG_DUMP_OOPS).
 *   "warn"  -> WARN_ON(1) (no kmsg_dump, just a splat in the log)
 *   "bug"   -> BUG() (same effect as "oops", via an invalid opcode)
 *   "lockup" -> spin 30 s with preemption off, then go on (softlockup_panic=0,
 *              Debian's default).  Debian 6.1 reports it as an RCU stall at 21 s
 *              (RCU_CPU_STALL_TIMEOUT); the stall report touches the soft-lockup
 *              watchdog, whose "watchdog: BUG: soft lockup" would otherwise come
 *              after 2 * watchdog_thresh (20 s)
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/proc_fs.h>
#include <linux/uaccess.h>
#include <linux/string.h>
#include <linux/jiffies.h>
#include <linux/preempt.h>

static int *volatile pvepstore_null_ptr;

static ssize_t pvepstore_oops_write(struct file *file, const char __user *ubuf,
				    size_t count, loff_t *ppos)
{
	char buf[16];
	size_t n = min(count, sizeof(buf) - 1);

	if (copy_from_user(buf, ubuf, n))
		return -EFAULT;
	buf[n] = '\0';
	strim(buf);

	if (!strcmp(buf, "oops")) {
		pr_emerg("pvepstore_oops: triggering NULL pointer dereference\n");
		*pvepstore_null_ptr = 0x1234;	/* Oops: write to address 0 */
		pr_emerg("pvepstore_oops: still alive?!\n");
	} else if (!strcmp(buf, "warn")) {
		pr_warn("pvepstore_oops: triggering WARN_ON\n");
		WARN_ON(1);
	} else if (!strcmp(buf, "lockup")) {
		unsigned long end = jiffies + 30 * HZ;

		pr_emerg("pvepstore_oops: spinning 30 s with preemption off\n");
		preempt_disable();
		while (time_before(jiffies, end))
			cpu_relax();
		preempt_enable();
		pr_emerg("pvepstore_oops: lockup over\n");
	} else if (!strcmp(buf, "bug")) {
		pr_emerg("pvepstore_oops: triggering BUG\n");
		BUG();
	} else {
		return -EINVAL;
	}
	return count;
}

static const struct proc_ops pvepstore_oops_ops = {
	.proc_write = pvepstore_oops_write,
	.proc_lseek = noop_llseek,
};

static int __init pvepstore_oops_init(void)
{
	if (!proc_create("pvepstore_oops", 0200, NULL, &pvepstore_oops_ops))
		return -ENOMEM;
	pr_info("pvepstore_oops: /proc/pvepstore_oops ready\n");
	return 0;
}

static void __exit pvepstore_oops_exit(void)
{
	remove_proc_entry("pvepstore_oops", NULL);
}

module_init(pvepstore_oops_init);
module_exit(pvepstore_oops_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pvepstore test helper: Oops/WARN on demand");
